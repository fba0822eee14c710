"""Reference solutions to the exercises, one module per lesson, with the names of the stubs."""
