"""Reports: the reproduce pipeline (train -> attack -> report) and its Markdown/HTML output."""
