"""One module per benchmark; each ``run(ctx)`` appends its figures to the context."""
