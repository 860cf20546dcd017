"""Core: the CaR selection (SelectOptions, car_select), clustering (PCA + KMeans), the row-source interface (Rows),
on-disk columns and atomic files, and the defects a scorer is checked against. numpy and scikit-learn only; imports
no other layer."""
