"""The classic generators: Self-Instruct, Evol-Instruct, templates, paraphrase and
back-translation, and the plain answers they share."""
