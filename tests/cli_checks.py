"""What every CLI test checks of a refused command."""


def assert_one_line_error(result, *fragments):
    """A click result that failed with exit 2 and one ``error:`` line holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
