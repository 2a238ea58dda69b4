"""Importable test apps: modules that build and register workflows for peers under test."""
