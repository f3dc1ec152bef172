"""Whole-pipeline workflows built on every stage: `promptseg demo` (phantoms end to end) and
`promptseg bench` (methods compared). They sit above train/ and inference/, so nothing below
imports them."""
