// Package cmdline is the exit-code convention the four components' mains share. Every main has one shape:
//
//	opts, err := app.ParseFlags(os.Args[1:])   // the command line into the component's app.Options
//	if err != nil {
//		os.Exit(cmdline.ParseExit(err))        // 0 after -h, 2 after a usage error
//	}
//	os.Exit(cmdline.RunExit(os.Stderr, "podidentity-<component>", app.Run(ctx, opts)))
//
// and the wiring is in the component's app package.
package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// Exit codes.
const (
	ExitOK     = 0
	ExitFailed = 1 // Run failed
	ExitUsage  = 2 // the command line is wrong
)

// ExitError is an error that asks for its own exit code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ParseExit is the exit code after a ParseFlags error: ExitOK for none and for -h (flag.ErrHelp), the code of
// an *ExitError, ExitUsage for any other. It prints nothing: the parser has said what went wrong.
func ParseExit(err error) int {
	var exit *ExitError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &exit):
		return exit.Code
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	default:
		return ExitUsage
	}
}

// RunExit prints Run's error, if any, to w as "<name>: <error>" and returns the exit code: ExitOK for none,
// the code of an *ExitError, ExitFailed for any other.
func RunExit(w io.Writer, name string, err error) int {
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(w, "%s: %v\n", name, err)
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	return ExitFailed
}
