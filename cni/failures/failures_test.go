package failures_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podidentity/podidentity/cni/failures"
)

func TestWriteAndDrain(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	if recs, err := failures.Drain(dir); err != nil || len(recs) != 0 {
		t.Fatalf("Drain of a missing dir = %v, %v", recs, err)
	}
	at := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	for i, cause := range []string{"api-unreachable", "forbidden"} {
		if err := failures.Write(dir, failures.Record{Time: at.Add(time.Duration(i)), Cause: cause, Pod: "apps/web", Message: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".add-failure-x.json.tmp"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "add-failure-junk.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	recs, err := failures.Drain(dir)
	if len(recs) != 2 || recs[0].Cause != "api-unreachable" || recs[1].Cause != "forbidden" || !recs[0].Time.Equal(at) {
		t.Errorf("Drain = %+v", recs)
	}
	if err == nil || !strings.Contains(err.Error(), "add-failure-junk.json") {
		t.Errorf("Drain error = %v, want the junk record named", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != ".add-failure-x.json.tmp" {
		t.Errorf("left in the spool: %v, want only the file being written", entries)
	}
}

func TestWriteIsBounded(t *testing.T) {
	dir := t.TempDir()
	for i := range failures.MaxFiles {
		if err := failures.Write(dir, failures.Record{Time: time.Unix(int64(i), 0), Cause: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	err := failures.Write(dir, failures.Record{Time: time.Now(), Cause: "x"})
	if err == nil || !strings.Contains(err.Error(), "is the podidentity-node DaemonSet running") {
		t.Errorf("Write past MaxFiles = %v", err)
	}
}
