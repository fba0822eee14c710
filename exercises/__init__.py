"""Exercises for the six lessons: your answers in <lesson>.py, their checks in test_<lesson>.py."""
