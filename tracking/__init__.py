"""tracking layer (see ARCHITECTURE.md)."""
