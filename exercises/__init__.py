"""Exercises for the five lessons: your answers in lessonN_*.py, their checks in test_lessonN_*.py."""
