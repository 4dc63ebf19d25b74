"""drivers/st2000r room of the ST2000R supervisor (see DESIGN)."""
