package testenv

import (
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/version"
)

func TestMinorOf(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{in: "v1.32.13", want: 32},
		{in: "v1.37.2", want: 37},
		{in: "v1.32.4-eks-1a2b3c4", want: 32},
		{in: "v1.33.1+k3s1", want: 33},
		{in: "1.30.0", want: 30},
		{in: "v2.0.0", wantErr: true},
		{in: "v1", wantErr: true},
		{in: "v1.x.0", wantErr: true},
		{in: "", wantErr: true},
	} {
		got, err := MinorOf(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("MinorOf(%q) = %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestCheckExpectedVersion(t *testing.T) {
	if err := CheckExpectedVersion("", "v1.37.2"); err != nil {
		t.Errorf("no expectation: %v", err)
	}
	if err := CheckExpectedVersion("v1.32.13", "v1.32.13"); err != nil {
		t.Errorf("matching: %v", err)
	}
	err := CheckExpectedVersion("v1.32.13", "v1.37.2")
	if err == nil {
		t.Fatal("a v1.37.2 control plane passed for a run that asked for v1.32.13")
	}
	for _, want := range []string{"v1.37.2", ExpectVersionEnv + "=v1.32.13", "make test-oldest"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// skipRecorder records a Skipf instead of stopping the test.
type skipRecorder struct {
	testing.TB
	skipped string
}

func (s *skipRecorder) Helper() {}
func (s *skipRecorder) Skipf(format string, args ...any) {
	s.skipped = fmt.Sprintf(format, args...)
}

func TestRequireMinor(t *testing.T) {
	e := &Env{Version: &version.Info{Major: "1", Minor: "32", GitVersion: "v1.32.13"}}
	for _, minor := range []int{29, 32} {
		r := &skipRecorder{TB: t}
		e.RequireMinor(r, minor, "why")
		if r.skipped != "" {
			t.Errorf("RequireMinor(%d) on v1.32.13 skipped: %s", minor, r.skipped)
		}
	}
	r := &skipRecorder{TB: t}
	e.RequireMinor(r, 33, "native sidecars are GA")
	for _, want := range []string{"1.33", "native sidecars are GA", "v1.32.13"} {
		if !strings.Contains(r.skipped, want) {
			t.Errorf("skip reason %q lacks %q", r.skipped, want)
		}
	}
}
