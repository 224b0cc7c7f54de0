package docketprom_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/docketq/docket/docketprom"
	"github.com/prometheus/client_golang/prometheus"
)

// The files checked here ship with the module: a Grafana dashboard, the
// alerting rules and the rules' unit tests for promtool.
const (
	dashboardFile = "grafana/docket.json"
	alertsFile    = "alerts.yml"
	alertTestFile = "testdata/alerts_test.yml"
)

// documentedSeries reads the series names listed in the package doc of
// docketprom.go: each indented line that starts with docket_. A histogram
// (listed under "Histograms") is queried through its _bucket, _sum and
// _count series, which are returned with it.
func documentedSeries(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("docketprom.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, _, ok := strings.Cut(string(src), "\npackage docketprom")
	if !ok {
		t.Fatal("docketprom.go: no package clause")
	}
	name := regexp.MustCompile(`^\t(docket_[a-z0-9_]+)`)
	series := map[string]bool{}
	histograms := false
	for line := range strings.SplitSeq(doc, "\n") {
		text, ok := strings.CutPrefix(line, "//")
		if !ok {
			continue
		}
		if m := name.FindStringSubmatch(text); m != nil {
			series[m[1]] = true
			if histograms {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					series[m[1]+suffix] = true
				}
			}
			continue
		}
		if prose := strings.TrimSpace(text); prose != "" && !strings.HasPrefix(text, "\t") {
			histograms = strings.HasPrefix(prose, "Histograms")
		}
	}
	if len(series) < 10 {
		t.Fatalf("docketprom.go lists %d series in its package doc, want the whole list: %v", len(series), series)
	}
	return series
}

// seriesName matches a docket series in PromQL (or in a rules file).
var seriesName = regexp.MustCompile(`\bdocket_[A-Za-z0-9_:]*`)

// unknownSeries returns the docket_ series that expr names and known lacks.
func unknownSeries(expr string, known map[string]bool) []string {
	var out []string
	for _, name := range seriesName.FindAllString(expr, -1) {
		if !known[name] {
			out = append(out, name)
		}
	}
	return out
}

// knownLabels are the labels docketprom's series carry (task, queue,
// state, and le on histogram buckets) and those a scrape adds.
var knownLabels = map[string]bool{"task": true, "queue": true, "state": true, "le": true, "instance": true, "job": true}

var (
	groupingClause = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcherBlock   = regexp.MustCompile(`\{([^{}]*)\}`)
	matcherLabel   = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// unknownLabels returns the labels that expr groups by or matches on and
// docketprom's series do not carry.
func unknownLabels(expr string) []string {
	var out []string
	for _, m := range groupingClause.FindAllStringSubmatch(expr, -1) {
		for l := range strings.SplitSeq(m[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !knownLabels[l] {
				out = append(out, l)
			}
		}
	}
	for _, m := range matcherBlock.FindAllStringSubmatch(expr, -1) {
		for part := range strings.SplitSeq(m[1], ",") {
			if l := matcherLabel.FindStringSubmatch(part); l != nil && !knownLabels[l[1]] {
				out = append(out, l[1])
			}
		}
	}
	return out
}

type grafanaTarget struct {
	Expr       string          `json:"expr"`
	Datasource json.RawMessage `json:"datasource"`
}

type grafanaPanel struct {
	ID          int             `json:"id"`
	Type        string          `json:"type"`
	Title       string          `json:"title"`
	Description string          `json:"description"`
	Datasource  json.RawMessage `json:"datasource"`
	Targets     []grafanaTarget `json:"targets"`
	Panels      []grafanaPanel  `json:"panels"` // a row's panels
}

type grafanaVariable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"` // a string, or {"query": "..."}
	Definition string          `json:"definition"`
	Datasource json.RawMessage `json:"datasource"`
}

type grafanaDashboard struct {
	SchemaVersion int            `json:"schemaVersion"`
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	Panels        []grafanaPanel `json:"panels"`
	Templating    struct {
		List []grafanaVariable `json:"list"`
	} `json:"templating"`
}

func loadDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// panels returns d's panels, those inside rows included, rows left out.
func (d grafanaDashboard) panels() []grafanaPanel {
	var out []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			if p.Type != "row" {
				out = append(out, p)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// query returns v's query text, whichever form it is stored in.
func (v grafanaVariable) query(t *testing.T) string {
	t.Helper()
	if len(v.Query) == 0 {
		return ""
	}
	var s string
	if err := json.Unmarshal(v.Query, &s); err == nil {
		return s
	}
	var obj struct {
		Query string `json:"query"`
	}
	if err := json.Unmarshal(v.Query, &obj); err != nil {
		t.Fatalf("variable %s: query %s: %v", v.Name, v.Query, err)
	}
	return obj.Query
}

// expressions returns every PromQL expression of d (panel targets, then
// template variable queries), each with where it is.
func (d grafanaDashboard) expressions(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range d.panels() {
		for i, tg := range p.Targets {
			out[p.Title+" target "+string(rune('A'+i))] = tg.Expr
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		out["variable "+v.Name] = v.query(t)
		if v.Definition != "" {
			out["variable "+v.Name+" definition"] = v.Definition
		}
	}
	return out
}

func TestAssetSeriesDocMatchesCollector(t *testing.T) {
	documented := documentedSeries(t)
	descs := make(chan *prometheus.Desc, 64)
	docketprom.New(docketprom.Options{}).Describe(descs)
	close(descs)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	var described []string
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no fqName in %s", d)
		}
		described = append(described, m[1])
		if !documented[m[1]] {
			t.Errorf("the collector describes %s, which docketprom.go's package doc does not list", m[1])
		}
	}
	for name := range documented {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !slices.Contains(described, name) && !slices.Contains(described, base) {
			t.Errorf("docketprom.go's package doc lists %s, which the collector does not describe", name)
		}
	}
}

func TestDashboardSeriesCheckerCatchesUnknownNames(t *testing.T) {
	known := map[string]bool{"docket_tasks_succeeded_total": true, "docket_task_runtime_seconds_bucket": true}
	expr := `sum(rate(docket_tasks_succeded_total[5m])) + histogram_quantile(0.5, sum by (le) (rate(docket_task_runtime_seconds_bucket[5m])))`
	if got := unknownSeries(expr, known); !slices.Equal(got, []string{"docket_tasks_succeded_total"}) {
		t.Errorf("unknownSeries = %v, want the misspelt counter alone", got)
	}
	if got := unknownLabels(`max by (queue, status) (docket_queue_tasks{queue=~"$queue", worker="a"})`); !slices.Equal(got, []string{"status", "worker"}) {
		t.Errorf("unknownLabels = %v, want [status worker]", got)
	}
}

func TestDashboardExpressionsUseExportedSeries(t *testing.T) {
	known := documentedSeries(t)
	exprs := loadDashboard(t).expressions(t)
	if len(exprs) < 15 {
		t.Fatalf("%s has %d expressions, want every panel's", dashboardFile, len(exprs))
	}
	for where, expr := range exprs {
		if len(seriesName.FindAllString(expr, -1)) == 0 {
			t.Errorf("%s: %q names no docket series", where, expr)
		}
		if bad := unknownSeries(expr, known); len(bad) > 0 {
			t.Errorf("%s: %v not exported by docketprom, in %q", where, bad, expr)
		}
		if bad := unknownLabels(expr); len(bad) > 0 {
			t.Errorf("%s: labels %v not on docketprom's series, in %q", where, bad, expr)
		}
	}
}

func TestDashboardBackendGaugesAggregatedWithMax(t *testing.T) {
	backendGauge := regexp.MustCompile(`\bdocket_queue_`)
	otherAggregation := regexp.MustCompile(`\b(?:sum|avg|count)\b`)
	for where, expr := range loadDashboard(t).expressions(t) {
		if strings.HasPrefix(where, "variable ") || !backendGauge.MatchString(expr) {
			continue
		}
		if !strings.Contains(expr, "max") || otherAggregation.MatchString(expr) {
			t.Errorf("%s: %q: every process reports the backend gauges, so aggregate them with max alone", where, expr)
		}
	}
}

func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q: want a schema of 36 or later, a uid and a title", d.SchemaVersion, d.UID, d.Title)
	}
	vars := map[string]grafanaVariable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if ds := vars["datasource"]; ds.Type != "datasource" || ds.query(t) != "prometheus" {
		t.Errorf("variable datasource: type %q query %q, want a prometheus data source variable", ds.Type, ds.query(t))
	}
	for _, name := range []string{"queue", "task"} {
		v, ok := vars[name]
		if !ok {
			t.Errorf("no %s variable", name)
			continue
		}
		if q := v.query(t); v.Type != "query" || !strings.HasPrefix(q, "label_values(") || !strings.HasSuffix(q, ", "+name+")") {
			t.Errorf("variable %s: type %q query %q, want label_values(..., %s)", name, v.Type, q, name)
		}
		if !usesDatasourceVariable(v.Datasource) {
			t.Errorf("variable %s: data source %s, want ${datasource}", name, v.Datasource)
		}
	}
	ids := map[int]bool{}
	for _, p := range d.panels() {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		if !usesDatasourceVariable(p.Datasource) {
			t.Errorf("panel %q: data source %s, want ${datasource}", p.Title, p.Datasource)
		}
		for i, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || !usesDatasourceVariable(tg.Datasource) {
				t.Errorf("panel %q target %d: expr %q, data source %s", p.Title, i, tg.Expr, tg.Datasource)
			}
		}
	}
}

// usesDatasourceVariable reports whether a panel's, target's or variable's
// data source is the dashboard's datasource variable.
func usesDatasourceVariable(raw json.RawMessage) bool {
	var ds struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	}
	if json.Unmarshal(raw, &ds) != nil {
		return false
	}
	return ds.Type == "prometheus" && (ds.UID == "${datasource}" || ds.UID == "$datasource")
}

func TestAlertRulesNameExportedSeries(t *testing.T) {
	known := documentedSeries(t)
	for _, file := range []string{alertsFile, alertTestFile} {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if bad := unknownSeries(string(raw), known); len(bad) > 0 {
			t.Errorf("%s: %v not exported by docketprom", file, bad)
		}
	}
}

func TestAlertRulesLabelsAndAnnotations(t *testing.T) {
	raw, err := os.ReadFile(alertsFile)
	if err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(alertTestFile)
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile(`(?m)^\s*- alert: `).Split(string(raw), -1)[1:]
	seen := map[string]bool{}
	for _, b := range blocks {
		name, _, _ := strings.Cut(b, "\n")
		name = strings.TrimSpace(name)
		seen[name] = true
		for _, want := range []string{`(?m)^\s+expr:`, `(?m)^\s+severity: (critical|warning|info)$`, `(?m)^\s+summary: `, `(?m)^\s+description: `, `\$labels\.`} {
			if !regexp.MustCompile(want).MatchString(b) {
				t.Errorf("alert %s: nothing matches %s", name, want)
			}
		}
		if !strings.Contains(string(tests), "alertname: "+name+"\n") {
			t.Errorf("alert %s is not tested in %s", name, alertTestFile)
		}
	}
	for _, name := range []string{"DocketBackendDown", "DocketQueueLagHigh", "DocketFailureRateHigh", "DocketLeaseLost",
		"DocketWorkersSaturated", "DocketQueuePausedLong", "DocketTasksExpiring"} {
		if !seen[name] {
			t.Errorf("%s has no alert %s", alertsFile, name)
		}
	}
}

// promtoolPath returns promtool's path. Without it the test is skipped, or
// fails when the environment variable CI is set.
func promtoolPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("promtool is needed to check %s in CI: %v", alertsFile, err)
		}
		t.Skipf("promtool is not on PATH (%v); install Prometheus's promtool to check %s", err, alertsFile)
	}
	return path
}

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(promtoolPath(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestAlertRulesCheck(t *testing.T) {
	runPromtool(t, "check", "rules", alertsFile)
}

func TestAlertRulesUnitTests(t *testing.T) {
	runPromtool(t, "test", "rules", alertTestFile)
}
