package cgroups_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podidentity/podidentity/cni/cgroups"
)

const (
	uidA = "0c6b8d2e-1f2a-4b3c-9d4e-5f6a7b8c9d0e"
	uidB = "11111111-2222-4333-8444-555555555555"
	uidC = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	// A static pod's UID is the hash of its manifest.
	staticUID  = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
	staticUID2 = "ffeeddccbbaa99887766554433221100"
	// Container ids are 64 hexadecimal digits.
	sandboxID = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
	appID     = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
	sidecarID = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c"
)

// tree creates directories (paths ending in "/") and cgroup.procs files ("dir/cgroup.procs=1 2") under root.
func tree(t *testing.T, root string, entries ...string) {
	t.Helper()
	for _, e := range entries {
		path, content, isFile := strings.Cut(e, "=")
		full := filepath.Join(root, path)
		if !isFile {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(strings.ReplaceAll(content, " ", "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func systemdUID(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

func TestScanPods(t *testing.T) {
	cases := []struct {
		name    string
		entries []string
		want    map[string]string // uid -> path relative to root
	}{
		{
			name: "cgroupfs driver, every QoS class",
			entries: []string{
				"kubepods/pod" + uidA + "/" + sandboxID + "/",
				"kubepods/burstable/pod" + uidB + "/" + appID + "/",
				"kubepods/besteffort/pod" + uidC + "/",
				"system.slice/containerd.service/",
			},
			want: map[string]string{
				uidA: "kubepods/pod" + uidA,
				uidB: "kubepods/burstable/pod" + uidB,
				uidC: "kubepods/besteffort/pod" + uidC,
			},
		},
		{
			name: "systemd driver, every QoS class",
			entries: []string{
				"kubepods.slice/kubepods-pod" + systemdUID(uidA) + ".slice/cri-containerd-" + sandboxID + ".scope/",
				"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + systemdUID(uidB) + ".slice/",
				"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(uidC) + ".slice/",
				"system.slice/kubelet.service/",
			},
			want: map[string]string{
				uidA: "kubepods.slice/kubepods-pod" + systemdUID(uidA) + ".slice",
				uidB: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + systemdUID(uidB) + ".slice",
				uidC: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(uidC) + ".slice",
			},
		},
		{
			name: "kubepods below a kubelet slice",
			entries: []string{
				"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + systemdUID(uidA) + ".slice/",
			},
			want: map[string]string{
				uidA: "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + systemdUID(uidA) + ".slice",
			},
		},
		{
			name: "kubepods below a test's own directory (how the tests lay it out)",
			entries: []string{
				"pi-abc/kubepods/besteffort/pod" + uidA + "/" + appID + "/",
			},
			want: map[string]string{uidA: "pi-abc/kubepods/besteffort/pod" + uidA},
		},
		{
			name: "static pods (the kubelet's hash as UID), both drivers",
			entries: []string{
				"kubepods/burstable/pod" + staticUID + "/",
				"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + staticUID2 + ".slice/",
			},
			want: map[string]string{
				staticUID:  "kubepods/burstable/pod" + staticUID,
				staticUID2: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + staticUID2 + ".slice",
			},
		},
		{
			name: "pod-like names outside kubepods are not pods",
			entries: []string{
				"pod" + uidA + "/",
				"system.slice/pod" + uidB + "/",
				"machine.slice/machine-pod" + systemdUID(uidC) + ".slice/",
			},
			want: map[string]string{},
		},
		{
			name: "names that are not UIDs",
			entries: []string{
				"kubepods/podnotauid/",
				"kubepods/burstable/pod" + strings.ToUpper(uidA) + "/",
				"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidB + "x.slice/",
			},
			want: map[string]string{},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			tree(t, root, tc.entries...)
			got, err := cgroups.ScanPods(root)
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{}
			for uid, rel := range tc.want {
				want[uid] = filepath.Join(root, rel)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("ScanPods =\n%v\nwant\n%v", got, want)
			}
		})
	}
}

func TestParsePodDir(t *testing.T) {
	for name, want := range map[string]string{
		"pod" + uidA: uidA,
		"kubepods-pod" + systemdUID(uidA) + ".slice":                    uidA,
		"kubepods-burstable-pod" + systemdUID(uidB) + ".slice":          uidB,
		"kubelet-kubepods-besteffort-pod" + systemdUID(uidC) + ".slice": uidC,
		"pod":                                "",
		"burstable":                          "",
		"kubepods-burstable.slice":           "",
		"pod" + uidA + ".slice":              "",
		"cri-containerd-" + appID + ".scope": "",
	} {
		got, ok := cgroups.ParsePodDir(name)
		if got != want || ok != (want != "") {
			t.Errorf("ParsePodDir(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

func TestContainerDirs(t *testing.T) {
	for _, layout := range []struct {
		name   string
		podDir string
		dir    func(id string) string
	}{
		{"cgroupfs", "kubepods/besteffort/pod" + uidA, func(id string) string { return id }},
		{"systemd containerd", "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(uidA) + ".slice",
			func(id string) string { return "cri-containerd-" + id + ".scope" }},
		{"systemd CRI-O", "kubepods.slice/kubepods-pod" + systemdUID(uidA) + ".slice",
			func(id string) string { return "crio-" + id + ".scope" }},
	} {
		t.Run(layout.name, func(t *testing.T) {
			root := t.TempDir()
			podRel := layout.podDir
			tree(t, root,
				podRel+"/"+layout.dir(sandboxID)+"/cgroup.procs=100",
				podRel+"/"+layout.dir(appID)+"/cgroup.procs=200 201",
				podRel+"/"+layout.dir(sidecarID)+"/cgroup.procs=300",
				// CRI-O's monitor scope is neither the container nor the sandbox's network namespace holder
				// by name; it must not be taken for the sidecar.
				podRel+"/crio-conmon-"+sidecarID+".scope/",
			)
			podDir := filepath.Join(root, podRel)
			pods, err := cgroups.ScanPods(root)
			if err != nil || pods[uidA] != podDir {
				t.Fatalf("ScanPods = %v, %v; want %s for %s", pods, err, podDir, uidA)
			}

			dir, err := cgroups.ContainerDir(podDir, sidecarID)
			if err != nil || dir != filepath.Join(podDir, layout.dir(sidecarID)) {
				t.Fatalf("ContainerDir(sidecar) = %q, %v", dir, err)
			}
			if _, err := cgroups.ContainerDir(podDir, "f00d"); err == nil {
				t.Error("ContainerDir found a container that has no cgroup")
			}

			cg, err := cgroups.Of(root, dir)
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(dir, &st); err != nil {
				t.Fatal(err)
			}
			wantLevel := uint32(strings.Count(podRel, "/") + 2)
			if cg.ID != st.Ino || cg.Level != wantLevel {
				t.Errorf("Of = %+v, want id %d (the inode), level %d", cg, st.Ino, wantLevel)
			}

			sandbox, others, err := cgroups.PodProcs(podDir, []string{appID, sidecarID})
			if err != nil {
				t.Fatal(err)
			}
			// CRI-O's conmon scope is no container of the status either: it is a sandbox candidate, here
			// without processes.
			if !slices.Equal(sandbox, []int{100}) {
				t.Errorf("sandbox pids = %v, want [100]", sandbox)
			}
			slices.Sort(others)
			if !slices.Equal(others, []int{200, 201, 300}) {
				t.Errorf("other pids = %v, want [200 201 300]", others)
			}
		})
	}
}

func TestOfRefusesOutsideTheRoot(t *testing.T) {
	root := t.TempDir()
	if _, err := cgroups.Of(root, root); err == nil {
		t.Error("Of(root, root) accepted the root itself")
	}
	if _, err := cgroups.Of(root, filepath.Dir(root)); err == nil {
		t.Error("Of accepted a directory above the root")
	}
}

func TestIsContainerDir(t *testing.T) {
	for _, tc := range []struct {
		name, id string
		want     bool
	}{
		{appID, appID, true},
		{"cri-containerd-" + appID + ".scope", appID, true},
		{"docker-" + appID + ".scope", appID, true},
		{"crio-" + appID + ".scope", appID, true},
		{"crio-conmon-" + appID + ".scope", appID, false},
		{"cri-containerd-" + appID + ".scope", sidecarID, false},
		{appID + "x", appID, false},
		{"", "", false},
	} {
		if got := cgroups.IsContainerDir(tc.name, tc.id); got != tc.want {
			t.Errorf("IsContainerDir(%q, %q) = %v, want %v", tc.name, tc.id, got, tc.want)
		}
	}
}
