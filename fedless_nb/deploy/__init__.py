"""Getting functions onto platforms: packaging builds a bundle from function_templates/ and prints its deploy command.

It reads files and installed package versions only; it imports nothing of rounds/, records/ or notebook/.
"""
