"""The database layer: every SQL statement the aggregator runs lives below here."""
