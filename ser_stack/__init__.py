"""Where the stack is, for both sides of it: infra/ (which starts the local stack) and every
client (flows, the CLI, tests). The lowest layer: it imports no other package of the project."""
