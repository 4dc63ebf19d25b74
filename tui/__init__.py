"""tui room of the ST2000R supervisor (see DESIGN)."""
