"""Reading, converting and caching CMT weights."""
