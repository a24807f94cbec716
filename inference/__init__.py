"""The model side: one CT series (pydicom datasets) in, nodule findings out. No networking here."""
