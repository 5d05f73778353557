package server

import "errors"

// errInternal is what clients see of any internal failure; the detail goes
// to the log only.
var errInternal = errors.New("internal error")
