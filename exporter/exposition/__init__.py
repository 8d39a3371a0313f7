"""The exposition: the line builder every source renders with (:mod:`.lines`), the
``/metrics`` body a scrape gets (:mod:`.render`) and the daemon's own series
(:mod:`.selfmetrics`)."""
