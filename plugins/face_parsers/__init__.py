"""guardkit built-in parts."""
