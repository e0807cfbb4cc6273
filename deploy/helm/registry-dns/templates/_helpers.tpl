{{/* Names and labels shared by every template. */}}

{{- define "registry-dns.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "registry-dns.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "registry-dns.labels" -}}
{{ include "registry-dns.selectorLabels" . }}
app.kubernetes.io/part-of: registry-dns
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "registry-dns.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces of the Services in .Values.names, each once, sorted: one Role in each. */}}
{{- define "registry-dns.serviceNamespaces" -}}
{{- $namespaces := dict -}}
{{- range .Values.names -}}
{{- $parts := splitList "/" (required "names[].service is required (NAMESPACE/SERVICE)" .service) -}}
{{- if or (ne (len $parts) 2) (not (first $parts)) (not (last $parts)) -}}
{{- fail (printf "names: service %q is not NAMESPACE/SERVICE" .service) -}}
{{- end -}}
{{- $_ := set $namespaces (first $parts) true -}}
{{- end -}}
{{- keys $namespaces | sortAlpha | join " " -}}
{{- end -}}

{{/* ADDR:PORT, with brackets for an IPv6 address. */}}
{{- define "registry-dns.hostPort" -}}
{{- if contains ":" .host -}}[{{ .host }}]:{{ .port }}{{- else -}}{{ .host }}:{{ .port }}{{- end -}}
{{- end -}}

{{/* The local names (names[].name and the names of records), space-separated. */}}
{{- define "registry-dns.localNames" -}}
{{- $names := list -}}
{{- range .Values.names -}}{{- $names = append $names .name -}}{{- end -}}
{{- range .Values.records -}}{{- $names = append $names (first (splitList "=" .)) -}}{{- end -}}
{{- join " " $names -}}
{{- end -}}

{{- define "registry-dns.nodeSetupSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-node-setup
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "registry-dns.nodeSetupLabels" -}}
{{ include "registry-dns.nodeSetupSelectorLabels" . }}
app.kubernetes.io/part-of: registry-dns
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Bytes in a size: the flags' (8MiB, 512KiB, 0) or a Kubernetes quantity (64Mi, 1Gi, 64M); -1 when unknown. */}}
{{- define "registry-dns.bytes" -}}
{{- $text := toString . -}}
{{- $digits := regexFind "^[0-9]+" $text -}}
{{- $unit := trimPrefix $digits $text -}}
{{- $scale := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "Ki" 1024 "KiB" 1024 "Mi" 1048576 "MiB" 1048576 "Gi" 1073741824 "GiB" 1073741824 -}}
{{- if and $digits (hasKey $scale $unit) -}}{{ mul (atoi $digits) (get $scale $unit) }}{{- else -}}-1{{- end -}}
{{- end -}}
