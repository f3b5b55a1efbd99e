package promtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestSeriesAndValue(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests_total"}, []string{"code", "method"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "up"})
	reg.MustRegister(c, g)
	c.WithLabelValues("200", "GET").Add(3)
	c.WithLabelValues("500", "GET").Inc()
	g.Set(7)

	if got := Series(t, reg, "requests_total"); len(got) != 2 || got["code=200,method=GET"] != 3 || got["code=500,method=GET"] != 1 {
		t.Errorf("Series(requests_total) = %v", got)
	}
	if got := Series(t, reg, "absent"); len(got) != 0 {
		t.Errorf("Series(absent) = %v, want empty", got)
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"requests_total", map[string]string{"code": "500"}, 1},
		{"requests_total", map[string]string{"code": "200", "method": "GET"}, 3},
		{"requests_total", map[string]string{"code": "404"}, 0},
		{"up", nil, 7},
		{"up", map[string]string{"node": ""}, 7}, // a label the series lacks matches ""
		{"up", map[string]string{"node": "n1"}, 0},
	} {
		if got := Value(t, reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("Value(%s, %v) = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	c.DeleteLabelValues("500", "GET")
	if got := Series(t, reg, "requests_total"); len(got) != 1 {
		t.Errorf("after deleting a series: %v", got)
	}
}
