"""`relscope study`: the whole study (zero-shot -> training -> anatomy -> representations -> patching -> heads)
as resumable stages, and its report."""
