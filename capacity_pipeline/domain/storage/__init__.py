"""The database underneath: WhaleFall's tables, the two SQL dialects, connections, month partitions."""
