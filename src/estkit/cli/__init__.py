"""Command line: the only place that reads configuration and wires objects together."""
