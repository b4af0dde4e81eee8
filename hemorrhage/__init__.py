"""hemorrhage: why compressed LLMs still answer multiple choice yet collapse when they generate.

Sub-packages (each a top-level folder of the repository):
  hemorrhage.theory    - the mathematics (sympy derivations, JAX evaluation)
  hemorrhage.sim       - JAX/nnx models of real checkpoints, compression, noise injection
  hemorrhage.validate  - experiments that hold theory against real models, figures
"""

__version__ = "0.1.0"
