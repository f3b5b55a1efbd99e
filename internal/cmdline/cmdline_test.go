package cmdline

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"testing"
)

func TestParseExit(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"parsed", nil, ExitOK},
		{"-h", flag.ErrHelp, ExitOK},
		{"-h, wrapped", fmt.Errorf("parsing: %w", flag.ErrHelp), ExitOK},
		{"unknown flag", errors.New("flag provided but not defined: -x"), ExitUsage},
		{"own code, even for -h", &ExitError{Code: ExitUsage, Err: flag.ErrHelp}, ExitUsage},
	}
	for _, tt := range tests {
		if got := ParseExit(tt.err); got != tt.want {
			t.Errorf("%s: ParseExit(%v) = %d, want %d", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestRunExit(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		want    int
		printed string
	}{
		{"ran", nil, ExitOK, ""},
		{"failed", errors.New("no API server"), ExitFailed, "podidentity-x: no API server\n"},
		{"own code", fmt.Errorf("starting: %w", &ExitError{Code: 2, Err: errors.New("bad config")}), 2, "podidentity-x: starting: bad config\n"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if got := RunExit(&out, "podidentity-x", tt.err); got != tt.want || out.String() != tt.printed {
			t.Errorf("%s: RunExit = %d printing %q, want %d printing %q", tt.name, got, out.String(), tt.want, tt.printed)
		}
	}
}
