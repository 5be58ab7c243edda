"""Reporting: statistics, tables (one writer for every report) and plots."""
