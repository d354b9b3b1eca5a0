"""A results page's hand-written verdict survives a re-run of its script."""

from benchmarks.common import write_keeping_verdict

PAGE = "# Results\n\n| a | 1 |\n\n## Verdict\n\nVERDICT\n"


def test_new_page_gets_the_placeholder(tmp_path):
    path = tmp_path / "r.md"
    write_keeping_verdict(path, PAGE)
    assert path.read_text() == PAGE


def test_written_verdict_is_kept_and_numbers_replaced(tmp_path):
    path = tmp_path / "r.md"
    path.write_text("# Results\n\n| a | 0 |\n\n## Verdict\n\nDDIM wins.\n")
    write_keeping_verdict(path, PAGE)
    assert path.read_text() == "# Results\n\n| a | 1 |\n\n## Verdict\n\nDDIM wins.\n"


def test_old_page_without_a_verdict_section_is_replaced(tmp_path):
    """A status page written before the script existed holds no verdict: none of it is
    pasted into the new page."""
    path = tmp_path / "r.md"
    path.write_text("# Not run yet\n\nThe job has not been run.\n")
    write_keeping_verdict(path, PAGE)
    assert path.read_text() == PAGE
