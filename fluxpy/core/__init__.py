"""The bottom layer: events, phases, dispatch, permissions, errors, callback declarations,
the graph and protected views."""
