"""Documents into training data: chunks -> questions -> grounded answers -> judge -> rows (expertkit data synth)."""
