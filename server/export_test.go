package server

// What the external tests reach of the package's insides.
var (
	NewWorkers  = newWorkers
	WithWorkers = withWorkers
)
