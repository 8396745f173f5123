"""The engine on the core: learner state, executors and the loop."""
