"""clarlab."""
