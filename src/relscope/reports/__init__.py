"""Tables and figures: pure functions from data to text or matplotlib Figures."""
