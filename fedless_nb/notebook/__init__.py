"""The notebook side: IPython magics, the live dashboard, the kernel spec installer.

Nothing here is imported by `import fedless_nb`; `%load_ext fedless_nb` loads the magics.
"""
