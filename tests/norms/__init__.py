"""Members' norms: the vocabulary data file, validation, the judgement and the ODRL mapping."""
