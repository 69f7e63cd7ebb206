"""The ecm-edge command line (click)."""
