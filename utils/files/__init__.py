"""Writing files safely: atomically, never through links or over inputs, one lock per folder."""
