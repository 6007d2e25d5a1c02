"""Refs (named pointers to objects) and their reflogs."""
