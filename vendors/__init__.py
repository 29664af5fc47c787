"""Vendor registry, vendor HTTP clients and the mock vendors."""
