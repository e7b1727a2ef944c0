{{/* Names and labels, the usual Helm way. */}}
{{- define "heron.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "heron.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "heron.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "heron.selectorLabels" -}}
app.kubernetes.io/name: {{ include "heron.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "heron.labels" -}}
helm.sh/chart: {{ include "heron.chart" . }}
{{ include "heron.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "heron.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "heron.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret that holds the API key, and its key. */}}
{{- define "heron.apiKeySecret" -}}
{{- default (printf "%s-api-key" (include "heron.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "heron.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The model store's claim: an existing one, or the chart's (Deployment). */}}
{{- define "heron.claimName" -}}
{{- default (printf "%s-models" (include "heron.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Environment every Heron container gets: the store, the API key. */}}
{{- define "heron.env" -}}
- name: HERON_MODELS
  value: /data/models
- name: HERON_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "heron.apiKeySecret" . }}
      key: {{ .Values.apiKey.secretKey }}
{{- end }}

{{/* Volume mounts every Heron container gets: the store and the writable scratch dirs under a
read-only root filesystem. */}}
{{- define "heron.volumeMounts" -}}
- name: models
  mountPath: /data/models
- name: cache
  mountPath: /home/heron/.cache
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* `heron serve`'s arguments after the image's entrypoint (which runs `heron "$@"`). */}}
{{- define "heron.serveArgs" -}}
- serve
{{- with .Values.model.name }}
- {{ . | quote }}
{{- end }}
{{- with .Values.model.servedModelName }}
- --served-model-name
- {{ . | quote }}
{{- end }}
{{- if gt (int .Values.dataParallelSize) 1 }}
- --data-parallel-size
- {{ .Values.dataParallelSize | int | quote }}
{{- end }}
{{- $flags := dict "maxNumSeqs" "--max-num-seqs" "maxNumBatchedTokens" "--max-num-batched-tokens" "kvCacheMemoryMb" "--kv-cache-memory-mb" "maxWaiting" "--max-waiting" "maxLoadedModels" "--max-loaded-models" "quantization" "--quantization" }}
{{- range $key := keys $flags | sortAlpha }}
{{- $value := index $.Values.engine $key }}
{{- if not (kindIs "invalid" $value) }}
- {{ index $flags $key }}
- {{ (ternary (int64 $value | toString) (toString $value) (kindIs "float64" $value)) | quote }}
{{- end }}
{{- end }}
- --shutdown-timeout
- {{ .Values.shutdownTimeoutSeconds | int | quote }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* A model store claim's spec: access modes, class, size. */}}
{{- define "heron.pvcSpec" -}}
accessModes:
  {{- toYaml .Values.persistence.accessModes | nindent 2 }}
{{- if .Values.persistence.storageClass }}
{{- if eq "-" .Values.persistence.storageClass }}
storageClassName: ""
{{- else }}
storageClassName: {{ .Values.persistence.storageClass | quote }}
{{- end }}
{{- end }}
resources:
  requests:
    storage: {{ .Values.persistence.size | quote }}
{{- end }}
