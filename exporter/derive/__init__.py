"""Pure computations over successive readings: no I/O, no clocks of their own."""
