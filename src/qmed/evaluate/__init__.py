"""Scoring: metrics as plain functions with explicit empty-input conventions, folder scoring, statistics."""
