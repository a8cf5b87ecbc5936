"""SGLang plugin: the entropy-adaptive temperature sampling backend (see docs/ once it lands)."""
