"""Human review: gates inside a run, the annotations and how they resolve, the CSV sheets and
the Label Studio client."""
