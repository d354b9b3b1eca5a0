"""The layer between the entry points (``launch/``) and the floors below: it wires models,
data, samplers and methods into runs and work directories. One job per subpackage, lowest
first: ``workdir`` and ``cluster``, then ``build`` and ``weights``, then ``generation``,
then ``experiments`` (docs/architecture.md)."""
