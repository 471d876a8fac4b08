"""Migration revisions, oldest first: `0001_initial` creates the tables, indexes and views."""
